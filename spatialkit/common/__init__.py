"""Small shared utilities at the very bottom of the package: statistics (``stats``), the checksummed
checkpoint store (``checkpoints``), code fingerprints (``fingerprint``), notebook-parameter validation
(``params``) and box geometry (``boxes``).

May import: the standard library and third-party packages only -- nothing else of spatialkit.
"""
