"""The ivig-cds benchmark (``make bench``): see bench/README.md."""
