"""radlint: audit radiograph lakes for wrong body-part, projection and orientation labels."""

__version__ = "0.1.0"
