"""What a buyer without an account may do: sign in by email ("My orders") and see their orders."""
