"""Task data: reading files (``records``), normalising them into ``Example``s (``examples``), and
tokenising (prompt, response) rows with the response-token loss (``tokenize``)."""

from sdft.data.examples import Example, LoadReport, content_id, load_examples
from sdft.data.records import read_records

__all__ = ["Example", "LoadReport", "content_id", "load_examples", "read_records"]
