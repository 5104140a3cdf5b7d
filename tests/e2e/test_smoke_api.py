def test_a_customer_created_through_the_api_can_be_read_back_at_once(client):
    created = client.post("/v1/customers", data={"name": "Jenny Rosen", "email": "jenny@example.com"})
    assert created.status_code == 200, created.text
    customer = created.json()
    assert customer["id"].startswith("cus_")
    read = client.get(f"/v1/customers/{customer['id']}")
    assert read.status_code == 200
    assert read.json()["name"] == "Jenny Rosen"
