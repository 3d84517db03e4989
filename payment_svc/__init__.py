"""paymesh's payment_svc."""
