"""What every stage shares: params schema, reproducible numerics, errors, atomic outputs, caches."""
