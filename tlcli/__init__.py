"""tlcli: turn a folder of labelled images into a deployable image classifier."""

__version__ = "0.1.0"


def load_model(path):
    """Load a tlcli `model.keras` as a Keras model, in Keras safe mode (no code in the file runs).

    The model holds tlcli's own layers (`Resize`, `Preprocess`); Keras can rebuild them only once
    they are registered, which importing `tlcli.model` does. So either call this, or
    `import tlcli.model` before `keras.saving.load_model(path)`. Raises `tlcli.errors.TlcliError`
    with a one-line reason for a file that is not a tlcli model. TensorFlow is imported here,
    on the first call, never by `import tlcli`.
    """
    from tlcli.model import load_classifier

    return load_classifier(path)
