"""paymesh's inventory_svc."""
