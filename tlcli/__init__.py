"""tlcli: turn a folder of labelled images into a deployable image classifier."""

__version__ = "0.1.0"
