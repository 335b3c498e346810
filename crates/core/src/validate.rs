//! Checks of a task's output against its expected artifacts and validation rules.

use crate::{NewArtifact, Task, ValidationRule, Verdict};

/// Check the output of `task`. Returns every problem found, each a sentence
/// that names the artifact and what is wrong (shown to the model on retry).
pub fn check_output(
    task: &Task,
    artifacts: &[NewArtifact],
    verdict: Option<&Verdict>,
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let find = |name: &str| {
        artifacts
            .iter()
            .filter(|a| a.name == name)
            .map(|a| a.content.as_str())
            .collect::<Vec<_>>()
    };
    let mut rules: Vec<ValidationRule> = task.validation.clone();
    if !rules.contains(&ValidationRule::ArtifactsPresent) {
        rules.insert(0, ValidationRule::ArtifactsPresent);
    }
    if task.gate.is_some() && !rules.contains(&ValidationRule::Verdict) {
        rules.push(ValidationRule::Verdict);
    }
    for rule in &rules {
        match rule {
            ValidationRule::ArtifactsPresent => {
                for exp in &task.expected {
                    let found = find(&exp.name);
                    if found.is_empty() {
                        problems.push(format!(
                            "expected artifact {:?} ({}) is missing",
                            exp.name, exp.kind
                        ));
                    } else if found.iter().all(|c| c.trim().is_empty()) {
                        problems.push(format!("artifact {:?} is empty", exp.name));
                    }
                }
            }
            ValidationRule::MinLength { artifact, chars } => {
                let len: usize = find(artifact)
                    .iter()
                    .map(|c| c.trim().chars().count())
                    .sum();
                if len < *chars {
                    problems.push(format!(
                        "artifact {artifact:?} has {len} characters; at least {chars} are required"
                    ));
                }
            }
            ValidationRule::Contains { artifact, text } => {
                let content = find(artifact).join("\n").to_lowercase();
                for t in text {
                    if !content.contains(&t.to_lowercase()) {
                        problems.push(format!("artifact {artifact:?} does not mention {t:?}"));
                    }
                }
            }
            ValidationRule::Verdict => {
                if verdict.is_none() {
                    problems.push("no review verdict: end with a JSON object {\"verdict\": \"PASS\"|\"FAIL\", \"findings\": [...]}".to_string());
                }
            }
            // Semantic rules need an LLM judge, which is not built yet: the
            // rubric is given to the model in its prompt (see the agents
            // crate) and `workflows validate` says it is not judged.
            ValidationRule::Semantic { .. } => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
