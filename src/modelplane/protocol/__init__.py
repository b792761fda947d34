"""Wire codecs of the data plane."""
