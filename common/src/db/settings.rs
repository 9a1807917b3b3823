//! The `cluster_settings` table: values every process of a cluster shares
//! (the database identity, the cluster secret, an all-in-one's claim).

use chrono::{DateTime, Utc};

use super::{Db, DbError};

impl Db {
    /// A cluster-wide setting, if it was ever written.
    pub async fn cluster_setting(&self, name: &str) -> Result<Option<String>, DbError> {
        let row: Option<(String,)> =
            self.fetch_one_opt("SELECT value FROM cluster_settings WHERE name = $1".into(), vec![name.into()]).await?;
        Ok(row.map(|(v,)| v))
    }

    /// Writes `value` unless the setting exists; returns what is stored
    /// (ours, or what another process wrote first).
    pub async fn cluster_setting_or_insert(&self, name: &str, value: &str) -> Result<String, DbError> {
        self.execute(
            "INSERT INTO cluster_settings (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING"
                .into(),
            vec![name.into(), value.into(), Utc::now().into()],
        )
        .await?;
        self.cluster_setting(name).await?.ok_or_else(|| DbError::Corrupt(format!("cluster setting {name} vanished")))
    }

    /// Writes `value` if the setting is absent, holds `value` already, or
    /// was last written before `expired_before` (a lease: renew by calling
    /// again). False when someone else's fresh value is there.
    pub async fn claim_cluster_setting(
        &self,
        name: &str,
        value: &str,
        expired_before: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        let n = self
            .execute(
                "INSERT INTO cluster_settings (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, created_at = excluded.created_at \
                 WHERE cluster_settings.value = excluded.value OR cluster_settings.created_at < $4"
                    .into(),
                vec![name.into(), value.into(), Utc::now().into(), expired_before.into()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Deletes the setting if it still holds `value`.
    pub async fn delete_cluster_setting_if(&self, name: &str, value: &str) -> Result<bool, DbError> {
        let n = self
            .execute(
                "DELETE FROM cluster_settings WHERE name = $1 AND value = $2".into(),
                vec![name.into(), value.into()],
            )
            .await?;
        Ok(n == 1)
    }
}
