"""paymesh's order_svc."""
