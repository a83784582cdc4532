"""Where work computes: Dask clusters for the data stages, torch backends for the model stages."""
