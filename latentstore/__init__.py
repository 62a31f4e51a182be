"""latentstore: grade vertebral fractures on CT through a diffusion autoencoder's semantic latents.

    import latentstore
    store = latentstore.connect("./latentstore-store")   # a folder or s3://bucket/prefix
    slices = store.slices.read(columns=["slice_id", "level_name"])   # Arrow; .to_pandas() for pandas
    store.sql("SELECT level_name, count(*) FROM slices GROUP BY ALL")
"""

from .store import Dataset, Store, connect

__version__ = "0.1.0"
__all__ = ["Dataset", "Store", "connect", "__version__"]
