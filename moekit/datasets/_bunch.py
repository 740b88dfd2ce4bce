"""The container the data sets are returned in."""


class Bunch(dict):
    """A dict whose keys are also attributes (as scikit-learn's Bunch)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e
