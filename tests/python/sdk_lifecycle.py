"""openstacksdk (4.22.0) drives a Ferric endpoint through a node's life.

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

try:
    bm.set_node_provision_state(node, "provide")
    raise AssertionError("provide from available must fail")
except openstack.exceptions.BadRequestException as e:
    assert "can not be performed" in str(e), str(e)

bm.delete_port(port)
bm.delete_node(node)
assert list(bm.nodes()) == []
try:
    bm.get_node(node.id)
    raise AssertionError("a deleted node must be gone")
except openstack.exceptions.NotFoundException:
    pass
print("openstacksdk lifecycle: ok")
