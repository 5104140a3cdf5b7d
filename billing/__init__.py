"""The billing domain: facts and the pure billing rules (money, meters, periods, credit grants, invoices, balances). No I/O."""
