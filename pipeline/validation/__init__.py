"""Stage ``validate``: Great Expectations suites over the ingested tables, with optional quarantine.

Great Expectations is imported only when :func:`validate` runs, so importing this package is cheap.
"""

from pipeline.validation.report import DataValidationError, ExpectationFailure, ValidationReport
from pipeline.validation.validate import validate

__all__ = ["DataValidationError", "ExpectationFailure", "ValidationReport", "validate"]
