"""Static files of the homeowner dashboard (a package so that setuptools ships them)."""
