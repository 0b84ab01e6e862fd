//! The dataset face's catalog: projects, their members, datasets, frames, inference sets and
//! segments. Each operation checks the caller's project role first (through [`access`]), so
//! no front end can reach a dataset without it. The synchronous ones are blocking: adapters
//! call them off their async workers.

use crate::{ServiceError, ServiceResult, Services, access, on_store};
use milkglass_core::{DatasetSpec, ProjectRole, ProjectSpec};
use milkglass_store::{
    BatchReport, DatasetInfo, DatasetPatch, DatasetStatus, FrameFilter, FramePage, InferenceSetInfo, ProjectInfo,
    ProjectPatch, Segment, SegmentSpec, StoreError, StoredFrame, User,
};

pub fn list_projects(services: &Services, user: &User) -> ServiceResult<Vec<ProjectInfo>> {
    Ok(services.store.list_projects(user)?)
}

pub fn create_project(services: &Services, user: &User, spec: &ProjectSpec) -> ServiceResult<ProjectInfo> {
    access::require_project_creator(user)?;
    Ok(services.store.create_project(spec, user)?)
}

pub fn project(services: &Services, user: &User, name: &str) -> ServiceResult<ProjectInfo> {
    access::project(&services.store, user, name, ProjectRole::Viewer)
}

pub fn update_project(
    services: &Services,
    user: &User,
    name: &str,
    patch: &ProjectPatch,
) -> ServiceResult<ProjectInfo> {
    access::project(&services.store, user, name, ProjectRole::Owner)?;
    Ok(services.store.update_project(name, patch)?)
}

/// Makes an owner's project anonymous while it holds no datasets (see
/// [`milkglass_store::Store::make_anonymous_while_empty`]).
pub fn make_anonymous(services: &Services, user: &User, name: &str) -> ServiceResult<ProjectInfo> {
    access::project(&services.store, user, name, ProjectRole::Owner)?;
    Ok(services.store.make_anonymous_while_empty(name)?)
}

/// Deletes a project with everything in it: datasets, saved indexes, and the files of its
/// hosted store (so its signed URLs stop working at once).
pub async fn delete_project(services: &Services, user: &User, name: &str) -> ServiceResult<()> {
    let (user, name) = (user.clone(), name.to_string());
    let (project, datasets) = on_store(services, move |store| {
        let project = access::project(store, &user, &name, ProjectRole::Owner)?;
        let datasets = store.list_datasets(&name)?;
        store.delete_project(&name)?;
        Ok((project, datasets))
    })
    .await?;
    for dataset in &datasets {
        services.indexes.forget(dataset);
    }
    services.raw.remove_project_files(&project).await;
    Ok(())
}

pub fn members(services: &Services, user: &User, project: &str) -> ServiceResult<Vec<(String, ProjectRole)>> {
    let project = access::project(&services.store, user, project, ProjectRole::Owner)?;
    Ok(services.store.members(&project)?)
}

pub fn set_member(
    services: &Services,
    user: &User,
    project: &str,
    member: &str,
    role: ProjectRole,
) -> ServiceResult<()> {
    let project = access::project(&services.store, user, project, ProjectRole::Owner)?;
    Ok(services.store.set_member(&project, member, role)?)
}

pub fn remove_member(services: &Services, user: &User, project: &str, member: &str) -> ServiceResult<()> {
    let project = access::project(&services.store, user, project, ProjectRole::Owner)?;
    Ok(services.store.remove_member(&project, member)?)
}

pub fn list_datasets(services: &Services, user: &User, project: &str) -> ServiceResult<Vec<DatasetInfo>> {
    access::project(&services.store, user, project, ProjectRole::Viewer)?;
    Ok(services.store.list_datasets(project)?)
}

pub fn create_dataset(
    services: &Services,
    user: &User,
    project: &str,
    spec: &DatasetSpec,
) -> ServiceResult<DatasetInfo> {
    access::project(&services.store, user, project, ProjectRole::Owner)?;
    Ok(services.store.create_dataset(project, spec)?)
}

pub fn dataset(services: &Services, user: &User, project: &str, name: &str) -> ServiceResult<DatasetInfo> {
    Ok(access::dataset(&services.store, user, project, name, ProjectRole::Viewer)?.1)
}

pub fn update_dataset(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
    patch: &DatasetPatch,
) -> ServiceResult<DatasetInfo> {
    access::project(&services.store, user, project, ProjectRole::Owner)?;
    Ok(services.store.update_dataset(project, name, patch)?)
}

/// Deletes a dataset with its saved and cached indexes.
pub fn delete_dataset(services: &Services, user: &User, project: &str, name: &str) -> ServiceResult<()> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Owner)?;
    services.store.delete_dataset(project, name)?;
    services.indexes.forget(&dataset);
    Ok(())
}

/// A dataset's counts, uploads and jobs, and where the preparation of its current version
/// for interactive use stands.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusAnswer {
    #[serde(flatten)]
    pub status: DatasetStatus,
    pub preparation: Preparation,
}

/// What the background work after an upload has made ready for the current version.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Preparation {
    /// The background preparation of the newest version (counts, indexes, map, SQL tables):
    /// `queued` behind other datasets, `running`, or `idle`.
    pub version: crate::Warming,
    /// The filter index frame listings are answered from.
    pub filter_index: Preparing,
    /// The similarity index of frame embeddings (cosine); `none` also below the size where
    /// search is exact anyway.
    pub similarity_index: Preparing,
    /// Per inference set, by name: its label errors and its metrics at the default thresholds
    /// (`ready` once kept for the current version; they are made while `version` runs).
    pub inference_sets: std::collections::BTreeMap<String, ModelInsights>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInsights {
    pub label_errors: Preparing,
    pub metrics: Preparing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preparing {
    None,
    Building,
    Ready,
}

pub fn status(services: &Services, user: &User, project: &str, name: &str) -> ServiceResult<StatusAnswer> {
    access::project(&services.store, user, project, ProjectRole::Viewer)?;
    let status = services.store.dataset_status(project, name)?;
    let preparation = Preparation {
        version: services.preparer.state(project, name),
        filter_index: services.frame_indexes.state(&services.store, &status.dataset),
        similarity_index: services.indexes.similarity_state(&status.dataset),
        inference_sets: (services.store.list_inference_sets(&status.dataset)?.into_iter())
            .map(|set| {
                let ready = services.indexes.model_insights_state(&status.dataset, &set);
                (set.name, ready)
            })
            .collect(),
    };
    Ok(StatusAnswer { status, preparation })
}

pub fn list_frames(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
    filter: &FrameFilter,
) -> ServiceResult<FramePage> {
    access::project(&services.store, user, project, ProjectRole::Viewer)?;
    let store = &services.store;
    if filter.version.is_none() {
        let dataset = store.dataset(project, name)?;
        if let Some(index) = services.frame_indexes.current(store, &dataset)
            && let Some(page) = store.list_frames_indexed(project, name, filter, &index)?
        {
            return Ok(page);
        }
    }
    Ok(store.list_frames(project, name, filter)?)
}

pub fn frame(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
    frame: &str,
    version: Option<i64>,
) -> ServiceResult<StoredFrame> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Viewer)?;
    Ok(services.store.frame(&dataset, frame, version)?)
}

/// Deletes frames as one new version. A single named frame that is not there is "not found".
pub fn delete_frames(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
    frame_ids: &[String],
    single: bool,
) -> ServiceResult<BatchReport> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Owner)?;
    services.store.delete_frames(&dataset, frame_ids).map_err(|e| match e {
        StoreError::Invalid(_) if single => ServiceError::not_found(format!("frame {:?} not found", frame_ids[0])),
        other => other.into(),
    })
}

pub fn list_inference_sets(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
) -> ServiceResult<Vec<InferenceSetInfo>> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Viewer)?;
    Ok(services.store.list_inference_sets(&dataset)?)
}

pub fn create_inference_set(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
    spec: &DatasetSpec,
) -> ServiceResult<InferenceSetInfo> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Owner)?;
    Ok(services.store.create_inference_set(&dataset, spec)?)
}

pub fn inference_set(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
    set: &str,
) -> ServiceResult<InferenceSetInfo> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Viewer)?;
    Ok(services.store.inference_set(&dataset, set)?)
}

pub fn update_inference_set(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
    set: &str,
    patch: &DatasetPatch,
) -> ServiceResult<InferenceSetInfo> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Owner)?;
    Ok(services.store.update_inference_set(&dataset, set, patch)?)
}

pub fn delete_inference_set(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
    set: &str,
) -> ServiceResult<()> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Owner)?;
    Ok(services.store.delete_inference_set(&dataset, set)?)
}

pub fn list_segments(services: &Services, user: &User, project: &str, name: &str) -> ServiceResult<Vec<Segment>> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Viewer)?;
    Ok(services.store.list_segments(&dataset)?)
}

pub fn create_segment(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
    spec: &SegmentSpec,
) -> ServiceResult<Segment> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Owner)?;
    Ok(services.store.create_segment(&dataset, spec)?)
}

pub fn segment(services: &Services, user: &User, project: &str, name: &str, segment: &str) -> ServiceResult<Segment> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Viewer)?;
    Ok(services.store.segment(&dataset, segment)?)
}

pub fn update_segment(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
    segment: &str,
    patch: &SegmentSpec,
) -> ServiceResult<Segment> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Owner)?;
    Ok(services.store.update_segment(&dataset, segment, patch)?)
}

pub fn delete_segment(services: &Services, user: &User, project: &str, name: &str, segment: &str) -> ServiceResult<()> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Owner)?;
    Ok(services.store.delete_segment(&dataset, segment)?)
}
