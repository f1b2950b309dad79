//! Every mergekit 0.1.5 merge method: the registry (names, parameter lists with defaults) and
//! `merge_tensor`, which dispatches one output tensor to its method's file.
//! Math: `shared/merge-methods.md`; reference: mergekit 0.1.5 `mergekit/merge_methods/`.

/// A merge method, by its mergekit registry name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Linear,
    Slerp,
    Nuslerp,
    Multislerp,
    Karcher,
    TaskArithmetic,
    Ties,
    DareTies,
    DareLinear,
    Breadcrumbs,
    BreadcrumbsTies,
    Della,
    DellaLinear,
    ModelStock,
    Nearswap,
    Sce,
    ArceeFusion,
    Passthrough,
}

impl Method {
    pub const ALL: [Method; 18] = [
        Method::Linear,
        Method::Slerp,
        Method::Nuslerp,
        Method::Multislerp,
        Method::Karcher,
        Method::TaskArithmetic,
        Method::Ties,
        Method::DareTies,
        Method::DareLinear,
        Method::Breadcrumbs,
        Method::BreadcrumbsTies,
        Method::Della,
        Method::DellaLinear,
        Method::ModelStock,
        Method::Nearswap,
        Method::Sce,
        Method::ArceeFusion,
        Method::Passthrough,
    ];

    /// The registry name used in YAML (`merge_method: dare_ties`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Linear => "linear",
            Method::Slerp => "slerp",
            Method::Nuslerp => "nuslerp",
            Method::Multislerp => "multislerp",
            Method::Karcher => "karcher",
            Method::TaskArithmetic => "task_arithmetic",
            Method::Ties => "ties",
            Method::DareTies => "dare_ties",
            Method::DareLinear => "dare_linear",
            Method::Breadcrumbs => "breadcrumbs",
            Method::BreadcrumbsTies => "breadcrumbs_ties",
            Method::Della => "della",
            Method::DellaLinear => "della_linear",
            Method::ModelStock => "model_stock",
            Method::Nearswap => "nearswap",
            Method::Sce => "sce",
            Method::ArceeFusion => "arcee_fusion",
            Method::Passthrough => "passthrough",
        }
    }

    pub fn names() -> Vec<&'static str> {
        Method::ALL.iter().map(|m| m.name()).collect()
    }

    pub fn from_name(name: &str) -> Result<Method, super::MergeError> {
        Method::ALL.iter().copied().find(|m| m.name() == name).ok_or_else(|| super::MergeError::UnknownMethod(name.to_string()))
    }
}
