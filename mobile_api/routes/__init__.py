"""HTTP routes: one flask-smorest Blueprint per resource."""
