"""The homeowner's node: offers, bids, serving awarded jobs, collecting payment."""
