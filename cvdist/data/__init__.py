"""Data: built-in data sets, and the batch sources every recipe reads from."""
