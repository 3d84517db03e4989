"""paymesh's gateway_mock."""
