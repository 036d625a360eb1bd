"""The ingest pipeline: uploaded spreadsheets become checked, de-identified datasets."""
