//! Randomness for the random sparsifiers (DARE, DELLA): seeded, portable, order-independent.
