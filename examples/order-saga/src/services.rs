//! The saga's services, one module each: a name and handlers.

/// Takes orders and closes the ones that can't be fulfilled.
pub mod checkout {
    use choreo::{Context, HandlerError, Service};

    use crate::events::{OrderCancelled, PaymentFailed, PaymentRefunded};

    async fn payment_failed(e: PaymentFailed, ctx: Context) -> Result<(), HandlerError> {
        ctx.emit(&OrderCancelled {
            order_id: e.order_id,
            reason: format!("payment failed: {}", e.reason),
        })?;
        Ok(())
    }

    async fn refunded(e: PaymentRefunded, ctx: Context) -> Result<(), HandlerError> {
        ctx.emit(&OrderCancelled {
            order_id: e.order_id,
            reason: format!("out of stock; {} cents refunded", e.amount_cents),
        })?;
        Ok(())
    }

    /// The checkout service. It also starts flows: see [`crate::place_order`].
    pub fn service() -> Service {
        Service::new("checkout").on(payment_failed).on(refunded)
    }
}

/// Charges cards, and refunds them when the stock is out.
pub mod payment {
    use choreo::{Context, HandlerError, Service};

    use crate::events::{OrderPlaced, OutOfStock, PaymentCaptured, PaymentFailed, PaymentRefunded};

    /// Orders above this are declined (the demo card limit).
    pub const CARD_LIMIT_CENTS: u64 = 50_000;

    async fn charge(o: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
        if o.total_cents > CARD_LIMIT_CENTS {
            ctx.emit(&PaymentFailed {
                order_id: o.order_id,
                reason: format!("{} cents is above the card limit", o.total_cents),
            })?;
        } else {
            ctx.emit(&PaymentCaptured {
                order_id: o.order_id,
                payment_id: format!("pay-{}", o.order_id),
                amount_cents: o.total_cents,
                items: o.items,
            })?;
        }
        Ok(())
    }

    async fn refund(e: OutOfStock, ctx: Context) -> Result<(), HandlerError> {
        ctx.emit(&PaymentRefunded {
            order_id: e.order_id,
            payment_id: e.payment_id,
            amount_cents: e.amount_cents,
        })?;
        Ok(())
    }

    /// The payment service.
    pub fn service() -> Service {
        Service::new("payment").on(charge).on(refund)
    }
}

/// Reserves stock.
pub mod inventory {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use choreo::{Context, HandlerError, Service};

    use crate::events::{OutOfStock, PaymentCaptured, StockReserved};

    /// Units in stock per SKU; SKUs not listed are unlimited.
    pub fn initial_stock() -> HashMap<String, u32> {
        HashMap::from([("sku-limited-edition".to_owned(), 3)])
    }

    /// The inventory service, with its stock.
    pub fn service() -> Service {
        // std Mutex: held for a lookup, never across an await.
        let stock = Arc::new(Mutex::new(initial_stock()));
        Service::new("inventory").on(move |p: PaymentCaptured, ctx: Context| {
            let stock = stock.clone();
            async move {
                let missing = {
                    let mut stock = stock
                        .lock()
                        .map_err(|_| HandlerError::msg("stock lock poisoned"))?;
                    let missing = p
                        .items
                        .iter()
                        .find(|i| stock.get(&i.sku).is_some_and(|left| *left < i.quantity))
                        .map(|i| i.sku.clone());
                    if missing.is_none() {
                        for i in &p.items {
                            if let Some(left) = stock.get_mut(&i.sku) {
                                *left -= i.quantity;
                            }
                        }
                    }
                    missing
                };
                match missing {
                    Some(sku) => ctx.emit(&OutOfStock {
                        order_id: p.order_id,
                        sku,
                        payment_id: p.payment_id,
                        amount_cents: p.amount_cents,
                    })?,
                    None => ctx.emit(&StockReserved {
                        order_id: p.order_id,
                        reservation_id: format!("res-{}", p.order_id),
                    })?,
                };
                Ok::<(), HandlerError>(())
            }
        })
    }
}

/// Ships reserved orders.
pub mod shipping {
    use choreo::{Context, HandlerError, Service};

    use crate::events::{OrderShipped, StockReserved};

    async fn ship(r: StockReserved, ctx: Context) -> Result<(), HandlerError> {
        ctx.emit(&OrderShipped {
            order_id: r.order_id,
            tracking: format!("TRK{:08}", r.order_id),
        })?;
        Ok(())
    }

    /// The shipping service.
    pub fn service() -> Service {
        Service::new("shipping").on(ship)
    }
}

/// Tells the customer. A sink: emits nothing.
pub mod notifications {
    use choreo::{Context, HandlerError, Service};

    use crate::events::{OrderCancelled, OrderShipped};

    async fn shipped(e: OrderShipped, _ctx: Context) -> Result<(), HandlerError> {
        tracing::info!(order_id = e.order_id, tracking = %e.tracking, "customer told: shipped");
        Ok(())
    }

    async fn cancelled(e: OrderCancelled, _ctx: Context) -> Result<(), HandlerError> {
        tracing::info!(order_id = e.order_id, reason = %e.reason, "customer told: cancelled");
        Ok(())
    }

    /// The notifications service.
    pub fn service() -> Service {
        Service::new("notifications").on(shipped).on(cancelled)
    }
}
