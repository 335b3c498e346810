//! The run's budget as a provider: [`BudgetedProvider`] wraps the provider of
//! one task attempt and refuses, before it is made, a call that would take
//! the run over its `budget_usd` or `budget_tokens` ([`orch_llm::Error::Budget`],
//! not retryable: the task goes DEAD and the run waits in NEEDS_INPUT until a
//! person raises the budget).

use std::sync::Arc;
use std::sync::Mutex;

use async_trait::async_trait;
use orch_llm::{Error, Provider, Request, Response};

/// A provider that checks the run's budget before every call.
#[derive(Debug)]
pub struct BudgetedProvider {
    inner: Arc<dyn Provider>,
    budget_usd: Option<f64>,
    budget_tokens: Option<i64>,
    /// What the run has spent: before this attempt, plus this attempt's calls.
    spent: Mutex<(f64, i64)>,
}

impl BudgetedProvider {
    /// Wrap `inner` with the run's limits and what it spent before this attempt.
    pub fn new(
        inner: Arc<dyn Provider>,
        budget_usd: Option<f64>,
        budget_tokens: Option<i64>,
        spent_usd: f64,
        spent_tokens: i64,
    ) -> Self {
        BudgetedProvider {
            inner,
            budget_usd,
            budget_tokens,
            spent: Mutex::new((spent_usd, spent_tokens)),
        }
    }

    /// Err if `request` would take the run over a limit.
    fn check(&self, request: &Request) -> orch_llm::Result<()> {
        let (spent_usd, spent_tokens) = *self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let estimate = orch_llm::tokens::estimate_request(request);
        let estimate_i = i64::try_from(estimate).unwrap_or(i64::MAX);
        if let Some(limit) = self.budget_tokens
            && spent_tokens.saturating_add(estimate_i) > limit
        {
            return Err(Error::Budget(format!(
                "the run has spent {spent_tokens} of {limit} tokens; this call needs about {estimate} more"
            )));
        }
        if let Some(limit) = self.budget_usd
            && let Some(price) = orch_llm::price_of(&request.model)
        {
            let more = estimate as f64 * price.input / 1_000_000.0;
            if spent_usd + more > limit {
                return Err(Error::Budget(format!(
                    "the run has spent ${spent_usd:.4} of ${limit:.4}; this call needs about ${more:.4} more"
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for BudgetedProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn is_scripted(&self) -> bool {
        self.inner.is_scripted()
    }

    fn default_model(&self) -> &str {
        self.inner.default_model()
    }

    async fn complete(&self, request: &Request) -> orch_llm::Result<Response> {
        self.check(request)?;
        let response = self.inner.complete(request).await?;
        let cost = orch_llm::cost_usd(&response.model, &response.usage);
        let tokens = response
            .usage
            .input_tokens
            .saturating_add(response.usage.output_tokens);
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        spent.0 += cost;
        spent.1 = spent
            .1
            .saturating_add(i64::try_from(tokens).unwrap_or(i64::MAX));
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_core::{Role, RunId};
    use orch_llm::{CallMeta, Message};

    #[derive(Debug)]
    struct Never;

    #[async_trait]
    impl Provider for Never {
        fn name(&self) -> &str {
            "never"
        }
        fn is_scripted(&self) -> bool {
            false
        }
        fn default_model(&self) -> &str {
            "claude-sonnet-4"
        }
        async fn complete(&self, _: &Request) -> orch_llm::Result<Response> {
            panic!("the budget should have refused this call")
        }
    }

    fn request() -> Request {
        Request {
            model: "claude-sonnet-4".into(),
            system: "s".repeat(4000),
            messages: vec![Message::user("hi")],
            max_tokens: 100,
            temperature: None,
            tools: vec![],
            meta: CallMeta {
                run_id: RunId("r".into()),
                task_id: "t".into(),
                role: Role::TechLead,
                attempt: 1,
                round: 0,
                step: 0,
                expected: vec![],
                gate: None,
            },
        }
    }

    #[tokio::test]
    async fn refuses_a_call_over_the_token_budget() {
        let p = BudgetedProvider::new(Arc::new(Never), None, Some(500), 0.0, 0);
        let err = p.complete(&request()).await.unwrap_err();
        assert!(matches!(err, Error::Budget(_)));
        assert!(err.to_string().starts_with("budget exceeded"));
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn refuses_a_call_over_the_usd_budget() {
        let p = BudgetedProvider::new(Arc::new(Never), Some(1.0), None, 0.9999, 0);
        let err = p.complete(&request()).await.unwrap_err();
        assert!(err.to_string().contains("of $1.0000"), "{err}");
    }
}
