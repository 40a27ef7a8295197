"""pushflow: decide push notifications in real time, and learn from what users did with them."""

__version__ = "0.1.0"
