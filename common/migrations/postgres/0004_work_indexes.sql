-- What a conductor looks for every take-over pass — nodes nobody took
-- over yet (no affinity), its own operations that lost their runner, power
-- actions lost with their conductor — found through indexes, so an idle
-- conductor reads what needs doing, not every node it owns.
CREATE INDEX nodes_affinity_state ON nodes (conductor_affinity, provision_state);
CREATE INDEX nodes_pending_power ON nodes (target_power_state) WHERE target_power_state IS NOT NULL;
