"""Transform: raw webhook events into the relational CRM model, idempotent and order-safe."""
