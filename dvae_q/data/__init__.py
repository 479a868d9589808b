"""Datasets: loading, hashing and batching the binarized archives (`datasets`), their file
formats (`formats`) and `dvae-q data fetch` (`fetch`)."""
