"""`dvae-q reproduce`, the poster's table: planning cells (`cells`), their CPU/GPU shares
(`placement`), the nodes' probes (`node_probe`), running them on Ray (`scheduler`), the driver
that ties them together (`reproduce`), collecting finished runs (`collect`), the report and its
figure (`report`, `report_figure`) and the published numbers (`paper`)."""
