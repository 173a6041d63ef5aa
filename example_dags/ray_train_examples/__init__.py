"""Training code for the example DAGs. Shipped to the Ray cluster by the operator (it sits next to the DAGs)."""
