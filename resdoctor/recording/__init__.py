"""Recording, on the training thread: hooks -> sensors -> segment (one transfer) -> journal."""
