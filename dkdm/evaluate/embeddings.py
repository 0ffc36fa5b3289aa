"""2-D maps of feature vectors (PCA and t-SNE, scikit-learn) for real, teacher and student samples."""

from __future__ import annotations

import numpy as np


def embed(groups: dict[str, np.ndarray], max_points: int = 400, seed: int = 0) -> dict:
    """Same-size random subsets per group; PCA fitted on all of them together, t-SNE on the same points."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    names, chunks = [], []
    for name, f in groups.items():
        idx = rng.choice(len(f), min(max_points, len(f)), replace=False)
        chunks.append(np.asarray(f, dtype=np.float64)[np.sort(idx)])
        names += [name] * len(idx)
    x = np.concatenate(chunks)
    pca = PCA(n_components=2, random_state=seed).fit(x)
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, max_iter=500, random_state=seed).fit_transform(x)
    return {"labels": names, "pca": pca.transform(x), "tsne": tsne,
            "pca_explained_variance_ratio": pca.explained_variance_ratio_.tolist(), "tsne_perplexity": perplexity}
