"""openstacksdk (4.22.0) drives a Ferric endpoint through a node's life,
with its chassis, traits, portgroups and allocations.

Usage: python sdk_lifecycle.py http://127.0.0.1:PORT
Exits non-zero (with a traceback) on the first failed expectation.
"""
import sys

import openstack

endpoint = sys.argv[1]
conn = openstack.connect(auth_type="none", baremetal_endpoint_override=endpoint)
bm = conn.baremetal

drivers = [d.name for d in bm.drivers()]
assert sorted(drivers) == ["fake-hardware", "ilo", "redfish"], drivers
conductors = list(bm.conductors())
assert [c.hostname for c in conductors] == ["conductor-1"], conductors
assert conductors[0].alive is True, conductors[0]

node = bm.create_node(driver="fake-hardware", name="sdk-1", driver_info={"fake_password": "x"})
assert node.provision_state == "enroll", node.provision_state
assert node.driver_info["fake_password"] == "******"
port = bm.create_port(node_id=node.id, address="52:54:00:aa:bb:cc")
assert port.address == "52:54:00:aa:bb:cc"
assert [p.id for p in bm.ports(node=node.id)] == [port.id]

node = bm.update_node(node, extra={"k": "v"})
assert node.extra == {"k": "v"}, node.extra
assert [n.id for n in bm.nodes()] == [node.id]
assert bm.get_node("sdk-1").id == node.id

node = bm.set_node_provision_state(node, "manage", wait=True, timeout=60)
assert node.provision_state == "manageable", node.provision_state
node = bm.set_node_provision_state(node, "provide", wait=True, timeout=60)
assert node.provision_state == "available", node.provision_state
result = bm.validate_node(node, required=("boot", "deploy", "power"))
assert result["power"].result, result
node = bm.set_node_provision_state(node, "active", wait=True, timeout=60)
assert node.provision_state == "active", node.provision_state
bm.set_node_power_state(node, "power off", wait=True, timeout=60)
assert bm.get_node(node.id).power_state == "power off"
bm.set_node_power_state(node, "power on", wait=True, timeout=60)
assert bm.get_node(node.id).power_state == "power on"
node = bm.set_node_provision_state(node, "deleted", wait=True, timeout=60)
assert node.provision_state == "available", node.provision_state

# chassis
chassis = bm.create_chassis(description="rack 7")
assert bm.get_chassis(chassis.id).description == "rack 7"
chassis = bm.update_chassis(chassis, extra={"row": "b"})
assert bm.get_chassis(chassis.id).extra == {"row": "b"}
assert chassis.id in [c.id for c in bm.chassis()]

# traits (by id: the SDK's trait calls change the Node object they are
# given, and a later update_node of it would PATCH /traits, which Ironic
# refuses as internal too)
bm.add_node_trait(node.id, "CUSTOM_GPU")
bm.set_node_traits(node.id, ["CUSTOM_GPU", "HW_CPU_X86_AVX2"])
assert sorted(bm.get_node(node.id).traits) == ["CUSTOM_GPU", "HW_CPU_X86_AVX2"]
bm.remove_node_trait(node.id, "HW_CPU_X86_AVX2")
assert bm.get_node(node.id).traits == ["CUSTOM_GPU"]
try:
    bm.add_node_trait(node.id, "not-a-trait")
    raise AssertionError("a trait that is neither standard nor CUSTOM_ must be refused")
except openstack.exceptions.BadRequestException as e:
    assert "not-a-trait" in str(e), str(e)
assert bm.get_node(node.id).traits == ["CUSTOM_GPU"], "a refused trait changes nothing"

# portgroups
pg = bm.create_port_group(node_id=node.id, name="bond0", address="52:54:00:aa:bb:cd")
assert [g.id for g in bm.port_groups(node=node.id)] == [pg.id]
pg = bm.update_port_group(pg, extra={"lacp": "fast"})
assert bm.get_port_group("bond0").extra == {"lacp": "fast"}
bm.delete_port_group(pg)
assert list(bm.port_groups(node=node.id)) == []

# allocations: one finds the node by class and trait, a second finds none
node = bm.update_node(node, resource_class="sdk-class")
alloc = bm.create_allocation(resource_class="sdk-class", traits=["CUSTOM_GPU"], name="sdk-alloc")
alloc = bm.wait_for_allocation(alloc, timeout=60)
assert alloc.state == "active" and alloc.node_id == node.id, alloc
assert bm.get_node(node.id).allocation_id == alloc.id
assert [a.id for a in bm.allocations(node=node.id)] == [alloc.id]
assert bm.get_allocation("sdk-alloc").id == alloc.id
alloc = bm.update_allocation(alloc, extra={"by": "sdk"})
assert bm.get_allocation(alloc.id).extra == {"by": "sdk"}
other = bm.wait_for_allocation(bm.create_allocation(resource_class="sdk-class"), timeout=60, ignore_error=True)
assert other.state == "error" and "sdk-class" in (other.last_error or ""), other
bm.delete_allocation(other)
bm.delete_allocation(alloc)
assert bm.get_node(node.id).allocation_id is None
assert list(bm.allocations()) == []

try:
    bm.set_node_provision_state(node, "provide")
    raise AssertionError("provide from available must fail")
except openstack.exceptions.BadRequestException as e:
    assert "can not be performed" in str(e), str(e)

bm.delete_port(port)
bm.delete_node(node)
assert list(bm.nodes()) == []
bm.delete_chassis(chassis)
assert list(bm.chassis()) == []
try:
    bm.get_node(node.id)
    raise AssertionError("a deleted node must be gone")
except openstack.exceptions.NotFoundException:
    pass
print("openstacksdk lifecycle: ok")
