"""Feature families (cleaning, date cycles, crosses, counts, group statistics, beta target encoding)."""
