"""Benchmarks behind `dkdm bench ...`: each module measures one stage and returns a JSON-able dict."""
