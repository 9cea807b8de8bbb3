"""Bounded contexts of the service, each split into services (rules), schemas (wire types)
and controllers (thin Litestar handlers)."""
