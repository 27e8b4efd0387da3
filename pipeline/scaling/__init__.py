"""The ParScale scaling experiment: several dense sizes, stage 2 at P = 1, 2, 4, 8, the fitted
parallel scaling law, and the inference cost of P streams against parameter scaling."""
