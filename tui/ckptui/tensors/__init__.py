"""A tensor's bytes: the one reader for export and value comparison (`reader`, local memory map
or range requests) and value statistics (`values`). numpy and ml_dtypes are imported inside
functions, so browsing never pays for them. Imports `formats` and below.
"""
