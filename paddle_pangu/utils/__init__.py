"""Small shared helpers with no model or framework dependencies."""
