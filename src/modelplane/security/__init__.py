"""Authentication, authorization and safe input handling."""
