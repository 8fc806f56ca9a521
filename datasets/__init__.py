"""Catalog, curation, pose schemas, the render job and HDF5 shards."""
