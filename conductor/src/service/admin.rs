//! Driver properties, drain, conductor status.

use super::*;

impl ConductorService {
    pub(super) async fn get_driver_properties_rpc(&self, req: Request<DriverRef>) -> Rpc<DriverPropertiesReply> {
        let r = req.into_inner();
        let ht = self.inner.registry.get(&r.driver).ok_or_else(|| {
            self.err(
                Reason::NotFound,
                format!("Could not find the following driver(s) or hardware type(s): {}.", r.driver),
            )
        })?;
        let probe = Node::new(Uuid::nil(), &r.driver, ProvisionState::Enroll);
        let driver = self.inner.registry.driver_for(&probe).map_err(|e| self.driver_err(e))?;
        let mut default_interfaces = HashMap::new();
        let mut enabled_interfaces = HashMap::new();
        for (kind, supported) in ht.interface_table() {
            default_interfaces.insert(kind.to_string(), supported.default.to_string());
            enabled_interfaces.insert(
                kind.to_string(),
                InterfaceNames { names: supported.names.iter().map(|s| s.to_string()).collect() },
            );
        }
        Ok(Response::new(DriverPropertiesReply {
            properties: driver.properties().into_iter().collect(),
            default_interfaces,
            enabled_interfaces,
        }))
    }

    pub(super) async fn drain_rpc(&self, _req: Request<Empty>) -> Rpc<ConductorStatus> {
        let inner = self.inner.clone();
        match crate::drain::begin(&inner).await {
            Ok(true) => {
                let exit = self.inner.exit_requested.clone();
                tokio::spawn(async move {
                    crate::drain::drain_and_wait(&inner).await;
                    exit.cancel();
                });
            }
            Ok(false) => {}
            Err(e) => return Err(self.err(Reason::Unavailable, e)),
        }
        self.get_conductor_status_rpc(Request::new(Empty {})).await
    }

    pub(super) async fn get_conductor_status_rpc(&self, _req: Request<Empty>) -> Rpc<ConductorStatus> {
        let ring = self.inner.ring.borrow().clone();
        let me = ring.member(&self.inner.id);
        let owned = match self.inner.count_my_nodes().await {
            Ok(n) => n,
            Err(e) => return Err(self.db_err(e)),
        };
        let progress = crate::drain::progress(&self.inner).await;
        Ok(Response::new(ConductorStatus {
            nodes_held: progress.nodes_held,
            draining: self.inner.draining.load(std::sync::atomic::Ordering::Relaxed),
            takeovers: self.inner.stats.takeovers.load(std::sync::atomic::Ordering::Relaxed),
            takeovers_failed: self.inner.stats.takeovers_failed.load(std::sync::atomic::Ordering::Relaxed),
            id: self.inner.id.to_string(),
            incarnation: self.inner.incarnation.to_string(),
            conductor_group: self.inner.cfg.conductor.conductor_group.clone(),
            hardware_types: self.inner.registry.names().iter().map(|s| s.to_string()).collect(),
            state: me.map(|m| format!("{:?}", m.state).to_lowercase()).unwrap_or_else(|| "stopped".into()),
            epoch: ring.epoch(),
            owned_nodes: owned,
            locks_held: progress.locks_held,
            operations_in_flight: self.inner.operations_in_flight() as u64,
        }))
    }
}
