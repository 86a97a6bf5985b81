"""Task data: reading files (``records``) and normalising them into ``Example``s (``examples``)."""

from sdft.data.examples import Example, LoadReport, content_id, load_examples
from sdft.data.records import DataError, read_records

__all__ = ["Example", "LoadReport", "content_id", "load_examples", "DataError", "read_records"]
