"""Alembic migrations of the decision log (run by :func:`router.service.decision_log.upgrade`)."""
