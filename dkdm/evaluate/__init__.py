"""Teacher-vs-student evaluation: sampling, features, FID/KID, speed, report."""
