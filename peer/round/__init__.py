"""The round: its pure decisions (assignment, checks, votes, tally, merge), the engine that runs it over the network, sync, and the phase clock."""
