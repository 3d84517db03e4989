"""paymesh's webhook_svc."""
