"""Presso API tier: FastAPI front end. Never imports torch."""
